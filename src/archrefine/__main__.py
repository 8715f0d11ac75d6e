from archrefine.cli.commands import main

main()
