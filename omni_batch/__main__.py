from omni_batch.cli.main import main

main()
