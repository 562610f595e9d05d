"""The sample run: the sample question asked in a real window, as the installed self-test and the screenshot tool do."""
