from klexp.cli import main

main()
