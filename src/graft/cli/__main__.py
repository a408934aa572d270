from graft.cli.main import run

run()
