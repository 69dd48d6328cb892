from bootlab.cli import main

raise SystemExit(main())
