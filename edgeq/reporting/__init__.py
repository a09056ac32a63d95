"""Terminal tables and the HTML report; everything that came from a file is escaped."""
