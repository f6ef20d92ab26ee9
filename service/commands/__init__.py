"""The implementations of the `vectorhive` commands; service/cli.py holds the parser and `main`.

- `common.py`: what every command shares (CliError, the database a command opens, messages)
- `serve.py`: `serve` (uvicorn, the port check, the workers)
- `admin.py`: the commands on the service's data: `migrate`, `tenants`, `keys`
- `tools.py`: the commands that open no database of their own: `openapi`, `models prepare`, `bench`

`import` lives with its feature, in service/imports/cli.py.
"""
