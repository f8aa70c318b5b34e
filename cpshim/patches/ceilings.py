"""The newest release of each patched distribution that cpshim's variants were tested on."""

TRANSFORMERS_CEILING = "5.25.0"
ACCELERATE_CEILING = "1.16.0"
TRL_CEILING = "1.16.0"
