from gptscratch.cli import main

raise SystemExit(main())
