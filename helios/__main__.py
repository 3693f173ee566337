from helios.cli import main

raise SystemExit(main())
