//go:build race

package churn

// RaceEnabled: the race detector slows the daemon by several times.
const RaceEnabled = true
