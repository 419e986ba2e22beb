"""Built-in run specs, one YAML file per dataset (shipped as nrs_cli.datasets)."""
