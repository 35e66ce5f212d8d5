"""How a host is reached: the local machine, SSH hosts, the Docker tunnel, the fleet scheduler."""
