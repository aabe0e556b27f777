from prunecli.cli.app import main

main()
