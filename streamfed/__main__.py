from streamfed.cli.main import app

app()
