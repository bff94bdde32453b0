"""The foundation every stage may import: it imports no stage (synth, train, evaluate) itself."""
