package dbrepl

import (
	"fmt"
	"sort"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/google/uuid"
)

// mariaPos parses a MariaDB GTID position (one GTID per domain).
func mariaPos(s string) (*mysql.MariadbGTIDSet, error) {
	set, err := mysql.ParseMariadbGTIDSet(strings.TrimSpace(s))
	if err != nil {
		return nil, err
	}
	return set.(*mysql.MariadbGTIDSet), nil
}

func mariaSeq(set *mysql.MariadbGTIDSet, domain uint32) uint64 {
	if g, ok := set.Sets[domain]; ok && g != nil {
		return g.SequenceNumber
	}
	return 0
}

// MariaDBBehind counts the transactions of the source's own domain that
// the replica has not applied: source gtid_binlog_pos vs replica
// gtid_current_pos in that domain. MariaDB numbers a domain's
// transactions consecutively, so the difference of sequence numbers is the
// count. A replica ahead (sampled later than the source) counts as 0.
func MariaDBBehind(sourceBinlogPos, replicaCurrentPos string, sourceDomain uint32) (int64, error) {
	src, err := mariaPos(sourceBinlogPos)
	if err != nil {
		return 0, fmt.Errorf("source gtid_binlog_pos %q: %w", sourceBinlogPos, err)
	}
	rep, err := mariaPos(replicaCurrentPos)
	if err != nil {
		return 0, fmt.Errorf("replica gtid_current_pos %q: %w", replicaCurrentPos, err)
	}
	s, r := mariaSeq(src, sourceDomain), mariaSeq(rep, sourceDomain)
	if r >= s {
		return 0, nil
	}
	return int64(s - r), nil
}

// MariaDBAppliedIn is the replica's sequence number in a domain, the
// "applied transactions" figure used to pick the node to keep writable.
func MariaDBAppliedIn(pos string, domain uint32) uint64 {
	p, err := mariaPos(pos)
	if err != nil {
		return 0
	}
	return mariaSeq(p, domain)
}

// MariaDBErrant lists GTIDs of node's binlog that break the pair's
// domain discipline: transactions in a domain other than the node's own
// that the peer does not have (written locally with a foreign or stray
// gtid_domain_id, or injected on this node only), and positions in the
// peer's domain ahead of what the peer itself ever logged.
func MariaDBErrant(nodeBinlogPos string, nodeDomain uint32, peerBinlogPos, peerCurrentPos string, peerDomain uint32) ([]string, error) {
	nb, err := mariaPos(nodeBinlogPos)
	if err != nil {
		return nil, err
	}
	pb, err := mariaPos(peerBinlogPos)
	if err != nil {
		return nil, err
	}
	pc, err := mariaPos(peerCurrentPos)
	if err != nil {
		return nil, err
	}
	var out []string
	for d, g := range nb.Sets {
		if g == nil || d == nodeDomain {
			continue
		}
		if d == peerDomain {
			if g.SequenceNumber > mariaSeq(pb, d) {
				out = append(out, g.String())
			}
			continue
		}
		if g.SequenceNumber > mariaSeq(pc, d) {
			out = append(out, g.String())
		}
	}
	sort.Strings(out)
	return out, nil
}

func mysqlSet(s string) (*mysql.MysqlGTIDSet, error) {
	set, err := mysql.ParseMysqlGTIDSet(compactGTID(s))
	if err != nil {
		return nil, err
	}
	return set.(*mysql.MysqlGTIDSet), nil
}

// countMissing counts transaction numbers of a not in b.
func countMissing(a, b mysql.IntervalSlice) int64 {
	var n int64
	for _, ia := range a {
		n += ia.Stop - ia.Start
		for _, ib := range b {
			lo, hi := max(ia.Start, ib.Start), min(ia.Stop, ib.Stop)
			if hi > lo {
				n -= hi - lo
			}
		}
	}
	return n
}

// MySQLBehind counts the source's own transactions (its server_uuid, all
// tags) in the source's gtid_executed that the replica's gtid_executed
// lacks.
func MySQLBehind(sourceExecuted, replicaExecuted, sourceUUID string) (int64, error) {
	src, err := mysqlSet(sourceExecuted)
	if err != nil {
		return 0, fmt.Errorf("source gtid_executed: %w", err)
	}
	rep, err := mysqlSet(replicaExecuted)
	if err != nil {
		return 0, fmt.Errorf("replica gtid_executed: %w", err)
	}
	u, err := uuid.Parse(sourceUUID)
	if err != nil {
		return 0, fmt.Errorf("source server_uuid %q: %w", sourceUUID, err)
	}
	var n int64
	for tag, iv := range (*src)[u] {
		n += countMissing(iv, (*rep)[u][tag])
	}
	return n, nil
}

// MySQLExecutedCount is the number of transactions in a gtid_executed set.
func MySQLExecutedCount(executed string) int64 {
	s, err := mysqlSet(executed)
	if err != nil {
		return 0
	}
	var n int64
	for _, tags := range *s {
		for _, iv := range tags {
			n += countMissing(iv, nil)
		}
	}
	return n
}

// MySQLErrant lists, per server_uuid other than the node's own, the
// transactions in node's gtid_executed that the peer lacks: those were
// executed on this node without ever coming from the peer.
func MySQLErrant(nodeExecuted, nodeUUID, peerExecuted string) ([]string, error) {
	ns, err := mysqlSet(nodeExecuted)
	if err != nil {
		return nil, err
	}
	ps, err := mysqlSet(peerExecuted)
	if err != nil {
		return nil, err
	}
	self, _ := uuid.Parse(nodeUUID)
	var out []string
	for u, tags := range *ns {
		if u == self {
			continue
		}
		for tag, iv := range tags {
			if c := countMissing(iv, (*ps)[u][tag]); c > 0 {
				name := u.String()
				if tag.String() != "" {
					name += ":" + tag.String()
				}
				out = append(out, fmt.Sprintf("%s (%d trx)", name, c))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}
