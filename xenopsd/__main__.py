from xenopsd.daemon import main

main()
