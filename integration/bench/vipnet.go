package main

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed/netns"
)

// whoAnswers asks http://addr/status from inside from's namespace (the
// witness, playing a client on the same bridge) and returns the name of
// the node that answered. Keep-alives are off, so every call opens a new
// connection and sees where the VIP is now.
func whoAnswers(from *netns.Node, addr string, timeout time.Duration) (string, error) {
	client := from.HTTPClient(timeout)
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + addr + "/status")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var st struct {
		Node string `json:"node"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err
	}
	if st.Node == "" {
		return "", errors.New("status without node name")
	}
	return st.Node, nil
}
