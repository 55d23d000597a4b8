# The module's outputs: what the step publishes for later steps (terraform output -json; sensitive ones withheld).
output "capacity_id" {
  value = null_resource.capacity.id
}

output "state" {
  value = null_resource.capacity.triggers.state
}

# Proves which token the run had without revealing it (named so that the journal does not take it for the token).
output "auth_sha256" {
  value = nonsensitive(sha256(var.api_token))
}
