"""The newest release of each patched distribution that cpshim's variants were tested on."""

TRANSFORMERS_CEILING = "5.24.0"
ACCELERATE_CEILING = "1.15.0"
TRL_CEILING = "1.16.0"
