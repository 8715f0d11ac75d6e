from archrefine.cli import main

main()
