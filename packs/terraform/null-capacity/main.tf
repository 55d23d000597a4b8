# compute/capacity@v1 as a Terraform root module, with only the hashicorp/null provider: it records the wanted
# capacity as a resource in the lane's state, so the driver's whole path (plan, saved plan, apply, drift, locking)
# runs offline. A real pack puts e.g. hcloud_server or google_compute_instance where null_resource stands.
terraform {
  required_version = ">= 1.0"
  required_providers {
    null = {
      source  = "hashicorp/null"
      version = "2.1.2"
    }
  }
  backend "pg" {} # conn_str and schema_name come from the driver (-backend-config), one schema per lane
}

resource "null_resource" "capacity" {
  # Any change of the wanted name or state replaces the record: the plan names it, the apply journals it.
  triggers = {
    name  = var.name
    state = var.state
  }
}
