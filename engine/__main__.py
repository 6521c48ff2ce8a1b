from engine.cli import main_entry

main_entry()
