"""GPU templates (the ``gpu`` target family), registered with :mod:`irkit.lower.templates`."""
