package repair

import (
	"context"
	"regexp"
	"strings"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// deferKeys takes the plain secondary keys (KEY `x` (...)) out of a
// SHOW CREATE TABLE statement so that a reseed loads the table without
// them and builds them afterwards in one ALTER TABLE: InnoDB then sorts
// each index once instead of inserting every row into it at random,
// which is most of a load's work once the buffer pool is smaller than the
// indexes. Only keys that end the list of indexes are deferred, so that
// adding them back keeps the definition identical (same index order);
// unique, fulltext and spatial keys, and tables with foreign keys, are
// left as they are. adds is the ALTER TABLE list ("ADD KEY ..., ...").
func deferKeys(create string) (table, adds string) {
	lines := strings.Split(create, "\n")
	if len(lines) < 3 || strings.Contains(create, "FOREIGN KEY") {
		return create, ""
	}
	// The body is between the first line ("CREATE TABLE `t` (") and the
	// line that starts with ")".
	end := -1
	for i := 1; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], ")") {
			end = i
			break
		}
	}
	if end < 0 {
		return create, ""
	}
	body := make([]string, 0, end-1)
	for _, l := range lines[1:end] {
		body = append(body, strings.TrimSuffix(strings.TrimSpace(l), ","))
	}
	isIndex := func(l string) bool {
		for _, p := range []string{"PRIMARY KEY", "UNIQUE KEY", "KEY ", "FULLTEXT KEY", "SPATIAL KEY", "VECTOR KEY"} {
			if strings.HasPrefix(l, p) {
				return true
			}
		}
		return false
	}
	lastIndex := -1
	for i, l := range body {
		if isIndex(l) {
			lastIndex = i
		}
	}
	first := lastIndex + 1
	for first > 0 && strings.HasPrefix(body[first-1], "KEY `") {
		first--
	}
	if first > lastIndex {
		return create, ""
	}
	var kept, deferred []string
	for i, l := range body {
		if i >= first && i <= lastIndex {
			deferred = append(deferred, "ADD "+l)
		} else {
			kept = append(kept, "  "+l)
		}
	}
	out := append([]string{lines[0]}, strings.Join(kept, ",\n"))
	out = append(out, lines[end:]...)
	return strings.Join(out, "\n"), strings.Join(deferred, ", ")
}

// autoIncrement is the table option that legitimately differs between
// two copies of the same table.
var autoIncrement = regexp.MustCompile(` AUTO_INCREMENT=\d+`)

// showCreate is the table's SHOW CREATE TABLE without its AUTO_INCREMENT
// counter: two tables with the same text have the same columns, keys
// and options. Repair compares it beside the checksum's column check,
// which ignores secondary keys: a reseed interrupted before its keys were
// built must be found different, and reseeded again.
func showCreate(ctx context.Context, q checksum.Querier, qualified string) (string, error) {
	var name, create string
	if err := q.QueryRowContext(ctx, "SHOW CREATE TABLE "+qualified).Scan(&name, &create); err != nil {
		return "", err
	}
	return autoIncrement.ReplaceAllString(create, ""), nil
}
