from nrs_cli.cli import main

main()
