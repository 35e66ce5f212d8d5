"""Container runtimes other than Docker (guide step 3.5): enroot and Podman, driven as commands on a host."""
