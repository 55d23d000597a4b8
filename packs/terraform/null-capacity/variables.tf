# One variable per input of compute/capacity@v1 (the driver validates the inputs against the module first).
variable "name" {
  type        = string
  description = "the capacity's name, e.g. drill-standby"
}

variable "state" {
  type        = string
  description = "running or stopped"
  validation {
    condition     = contains(["running", "stopped"], var.state)
    error_message = "The state must be running or stopped."
  }
}

# A step secret: reaches Terraform only as TF_VAR_api_token in the child's environment (a real pack hands it to
# its provider). Sensitive, so Terraform prints it as (sensitive); never put it in a resource's arguments.
variable "api_token" {
  type      = string
  sensitive = true
  default   = ""
}
