"""Pure judgement of gathered facts: no I/O, so every rule is unit-tested on captures."""
