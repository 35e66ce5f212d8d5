"""The conformance suite, one module per step of the setup guide. Shipped inside the wheel."""
