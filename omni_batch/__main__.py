from omni_batch.cli import main

main()
