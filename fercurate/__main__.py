from fercurate.cli import main

main()
