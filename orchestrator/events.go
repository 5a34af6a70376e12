package orchestrator

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// MaxEvents is how many events /status keeps.
const MaxEvents = 100

// Event kinds.
const (
	EventRole       = "role"
	EventFence      = "fence"
	EventResource   = "resource"
	EventReload     = "reload"
	EventHeartbeat  = "heartbeat"
	EventPeer       = "peer"
	EventWitness    = "witness"
	EventSupervisor = "supervisor"
	EventTrack      = "track"
	EventArbiter    = "arbiter"
)

// Event is one entry of the decision log: "why did it fail over at 03:12".
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	Level   string    `json:"level"`
}

// EventLog keeps the newest MaxEvents events and logs each one.
type EventLog struct {
	logger *slog.Logger
	mu     sync.Mutex
	ring   []Event
	next   int
	full   bool
}

// NewEventLog returns an empty log writing through logger.
func NewEventLog(logger *slog.Logger) *EventLog {
	return &EventLog{logger: logger, ring: make([]Event, MaxEvents)}
}

// Add records an informational event.
func (l *EventLog) Add(kind, msg string, attrs ...any) { l.add(slog.LevelInfo, kind, msg, attrs) }

// Warn records an event that needs an operator's attention.
func (l *EventLog) Warn(kind, msg string, attrs ...any) { l.add(slog.LevelWarn, kind, msg, attrs) }

func (l *EventLog) add(level slog.Level, kind, msg string, attrs []any) {
	l.logger.Log(context.Background(), level, msg, append([]any{"event", kind}, attrs...)...)
	l.mu.Lock()
	l.ring[l.next] = Event{Time: time.Now(), Kind: kind, Message: msg, Level: level.String()}
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
	l.mu.Unlock()
}

// List returns the events, oldest first.
func (l *EventLog) List() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	if l.full {
		out = append(out, l.ring[l.next:]...)
	}
	return append(out, l.ring[:l.next]...)
}
