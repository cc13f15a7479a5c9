from jetdag.cli import main

main()
