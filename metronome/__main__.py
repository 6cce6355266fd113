from metronome.cli import main

main()
