"""How a run trains and evaluates: the faithful (the exercise's) and the fast path."""
