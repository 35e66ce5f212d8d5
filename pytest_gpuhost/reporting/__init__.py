"""Results turned into reports: JSON, HTML, JUnit extras, Prometheus, baselines, actions."""
