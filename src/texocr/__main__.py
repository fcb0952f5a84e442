from texocr.cli import main

raise SystemExit(main())
