from geounet.cli import main

main()
