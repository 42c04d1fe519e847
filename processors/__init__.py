"""Stream processors (faust agents) and the pure decision logic they call."""
