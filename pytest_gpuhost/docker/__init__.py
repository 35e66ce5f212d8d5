"""Docker and its containers: the client, error diagnoses, containers, compose, images."""
