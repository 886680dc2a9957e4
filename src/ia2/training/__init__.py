"""Training adapters: the declared losses and methods (stages of a loss and a label source), the loop that trains
one stage for one adapter or several packed together with early stopping on dev loss, and metric trackers."""
