# An ATP router policy for the seed's task meta (docs/policy.md has the contract).
#
#   atp serve --policy examples/policy/policy.rego
#
# The router asks for the whole `data.atp.policy` document once per stream (cached by
# its input), with input {tenant, claims, task_type, tool_permissions, data_scope, lane,
# requested_adapters, candidates, adapters, window}. A `deny` entry ends the stream with
# ESEC "REASON (rule: RULE)"; `lane_cap` and `candidates` narrow what the stream gets.
package atp.policy

import rego.v1

# Tools a stream may ask for in meta.tool_permissions, unless the token lists its own
# in a `tools` claim.
default_tools := {"calculator", "web_search", "code_interpreter", "secrets.read"}

# Tools that read secrets: never with data scope "no_secrets".
secret_tools := {"secrets.read", "vault", "filesystem"}

# Data scopes this router knows; any other is refused (a scope it cannot enforce).
known_scopes := {"no_secrets", "internal", "public"}

# Adapters that run outside the organisation: never for data scope "internal".
external_adapters := {"strong", "external"}

tenant_tools := {t | some t in input.claims.tools} if input.claims.tools
else := default_tools

deny contains {"rule": "tool_permissions", "reason": sprintf("tool \"%v\" is not permitted for tenant \"%v\"", [t, input.tenant])} if {
	some t in input.tool_permissions
	not t in tenant_tools
}

deny contains {"rule": "no_secrets", "reason": sprintf("tool \"%v\" reads secrets, which data scope no_secrets forbids", [t])} if {
	"no_secrets" in input.data_scope
	some t in input.tool_permissions
	t in secret_tools
}

deny contains {"rule": "data_scope", "reason": sprintf("data scope \"%v\" is not known to this router", [s])} if {
	some s in input.data_scope
	not s in known_scopes
}

# Internal data stays on internal adapters (ATP-SEC-011, ATP-SEC-013).
candidates := [a | some a in input.candidates; not a in external_adapters] if {
	"internal" in input.data_scope
}

# Free-plan tokens never run in gold.
lane_cap := "silver" if input.claims.plan == "free"
