"""The host's shell, `docteur.cli`: the `docteur` command and what every host part shares.

main.py (entry points and the error funnel), parser.py (every subcommand's arguments),
commands.py (what each subcommand does; imports the builder and the VM side lazily),
errors.py, log.py, progress.py, redact.py (used by docteur.builder and docteur.vm, which
never import each other).
"""
