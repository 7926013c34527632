from vla_rl_lib.cli import main

raise SystemExit(main())
