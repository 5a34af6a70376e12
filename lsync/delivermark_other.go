//go:build !linux

package lsync

import "time"

func (s *Source) markedDelivered(string, Entry) bool { return false }

func (s *Source) landedAs(string, int64, int64) bool { return false }

// MarkDelivered is a no-op without Linux xattrs.
func MarkDelivered(int, string, int64, time.Time) {}
