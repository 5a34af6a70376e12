package lsync

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// Excluder decides which paths a job leaves alone, with rsync-like pattern
// rules so that lsyncd/rsync exclude lists carry over:
//
//   - a trailing "/" matches directories only (".git/" excludes every .git
//     directory and everything below it);
//   - a pattern without "/" (apart from a trailing one) matches the last
//     component at any depth ("*.swp");
//   - a pattern with a "/" is anchored at the root ("cache/**", "/tmp");
//   - "*" and "?" never cross "/", "**" does, "[...]" is a character class.
//
// An excluded directory excludes its whole subtree. Names starting with
// TempPrefix are always excluded, and so is a top-level lost+found (it
// belongs to the file system of a mounted docroot, is readable by root
// only, and is never content). Excluded paths on a target are neither
// written nor deleted.
type Excluder struct {
	rules []excludeRule
}

type excludeRule struct {
	re       *regexp.Regexp
	dirOnly  bool
	basename bool
}

// NewExcluder compiles patterns.
func NewExcluder(patterns []string) (*Excluder, error) {
	e := &Excluder{}
	for i, p := range patterns {
		if strings.TrimSpace(p) == "" {
			return nil, fmt.Errorf("exclude[%d]: empty pattern", i)
		}
		r := excludeRule{}
		if strings.HasSuffix(p, "/") {
			r.dirOnly = true
			p = strings.TrimRight(p, "/")
		}
		anchored := strings.Contains(p, "/")
		p = strings.TrimPrefix(p, "/")
		r.basename = !anchored
		re, err := globToRegexp(p)
		if err != nil {
			return nil, fmt.Errorf("exclude[%d]: bad pattern %q: %v", i, patterns[i], err)
		}
		r.re = re
		e.rules = append(e.rules, r)
	}
	return e, nil
}

func globToRegexp(p string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '*':
			if i+1 < len(p) && p[i+1] == '*' {
				i++
				// "**/" also matches zero directories.
				if i+1 < len(p) && p[i+1] == '/' {
					i++
					b.WriteString("(?:.*/)?")
				} else {
					b.WriteString(".*")
				}
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		case '[':
			j := strings.IndexByte(p[i+1:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unterminated character class")
			}
			class := p[i+1 : i+1+j]
			if strings.HasPrefix(class, "!") {
				class = "^" + class[1:]
			}
			b.WriteString("[" + class + "]")
			i += j + 1
		case '\\':
			if i+1 < len(p) {
				i++
				b.WriteString(regexp.QuoteMeta(string(p[i])))
			}
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// matchOne reports whether rel itself (not its parents) is excluded.
func (e *Excluder) matchOne(rel string, isDir bool) bool {
	base := path.Base(rel)
	if strings.HasPrefix(base, TempPrefix) {
		return true
	}
	for _, r := range e.rules {
		if r.dirOnly && !isDir {
			continue
		}
		subject := rel
		if r.basename {
			subject = base
		}
		if r.re.MatchString(subject) {
			return true
		}
	}
	return false
}

// Excluded reports whether rel (slash-separated, relative to the root) or
// one of its parent directories is excluded. isDir describes rel itself.
// lostFound is fsck's directory at the top of a file system.
const lostFound = "lost+found"

func (e *Excluder) Excluded(rel string, isDir bool) bool {
	if rel == lostFound || strings.HasPrefix(rel, lostFound+"/") {
		return true
	}
	if e == nil {
		return strings.HasPrefix(path.Base(rel), TempPrefix)
	}
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' && e.matchOne(rel[:i], true) {
			return true
		}
	}
	return e.matchOne(rel, isDir)
}
