from stream.cli.main import main

raise SystemExit(main())
