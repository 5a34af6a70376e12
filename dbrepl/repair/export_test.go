package repair

// SetNoLoadData makes reseeds copy with INSERTs (the path for a target
// that refuses LOAD DATA LOCAL INFILE).
func SetNoLoadData(v bool) { noLoadData = v }
