from klexp.app.cli import main

main()
