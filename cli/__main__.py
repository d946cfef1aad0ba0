from fedpeer_cli.main import app

app(prog_name="fedpeer")
