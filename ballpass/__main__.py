from ballpass.cli import main

raise SystemExit(main())
