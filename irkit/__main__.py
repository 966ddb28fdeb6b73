from irkit.cli import main

raise SystemExit(main())
