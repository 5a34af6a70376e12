package repair

import "testing"

func TestDeferKeys(t *testing.T) {
	sysbench := "CREATE TABLE `sbtest1` (\n" +
		"  `id` int(11) NOT NULL AUTO_INCREMENT,\n" +
		"  `k` int(11) NOT NULL DEFAULT 0,\n" +
		"  `c` char(120) NOT NULL DEFAULT '',\n" +
		"  PRIMARY KEY (`id`),\n" +
		"  KEY `k_1` (`k`),\n" +
		"  KEY `c_k` (`c`(10),`k`)\n" +
		") ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=latin1"
	for _, c := range []struct {
		name, in, table, adds string
	}{
		{"sysbench", sysbench,
			"CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=latin1",
			"ADD KEY `k_1` (`k`), ADD KEY `c_k` (`c`(10),`k`)"},
		{"check constraint after the keys stays",
			"CREATE TABLE `t` (\n  `a` int(11) DEFAULT NULL,\n  KEY `a` (`a`),\n  CONSTRAINT `pos` CHECK (`a` > 0)\n) ENGINE=InnoDB",
			"CREATE TABLE `t` (\n  `a` int(11) DEFAULT NULL,\n  CONSTRAINT `pos` CHECK (`a` > 0)\n) ENGINE=InnoDB",
			"ADD KEY `a` (`a`)"},
		{"a unique key last: nothing deferred (index order would change)",
			"CREATE TABLE `t` (\n  `a` int(11) DEFAULT NULL,\n  `b` int(11) DEFAULT NULL,\n  KEY `a` (`a`),\n  UNIQUE KEY `b` (`b`)\n) ENGINE=InnoDB",
			"", ""},
		{"foreign keys: nothing deferred",
			"CREATE TABLE `t` (\n  `a` int(11) DEFAULT NULL,\n  KEY `a` (`a`),\n  CONSTRAINT `f` FOREIGN KEY (`a`) REFERENCES `p` (`id`)\n) ENGINE=InnoDB",
			"", ""},
		{"no secondary key", "CREATE TABLE `t` (\n  `a` int(11) NOT NULL,\n  PRIMARY KEY (`a`)\n) ENGINE=InnoDB", "", ""},
		{"fulltext last: nothing deferred",
			"CREATE TABLE `t` (\n  `a` text,\n  KEY `x` (`a`(5)),\n  FULLTEXT KEY `f` (`a`)\n) ENGINE=InnoDB", "", ""},
	} {
		table, adds := deferKeys(c.in)
		wantTable := c.table
		if wantTable == "" {
			wantTable = c.in
		}
		if table != wantTable || adds != c.adds {
			t.Errorf("%s:\n got %q\n     %q\nwant %q\n     %q", c.name, table, adds, wantTable, c.adds)
		}
	}
}
